// expect-error: cruster: this method is private: it is never callable, not even from entities
#include "fixtures.hpp"
#include "workflow_fixtures.hpp"

struct Auditor {
  bool execute(cruster::workflow_context<Auditor> &wf, const SyncRequest &r) {
    return wf.call<&Ledger::validate>("l-1", r); // private: not even a workflow may call it
  }
};

void use(cruster::runtime &rt) { rt.register_workflow(Auditor{}); }
