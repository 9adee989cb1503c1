// expect-error: cruster: W::execute takes (cruster::workflow_context<W>&) or (cruster::workflow_context<W>&, Request)
#include "workflow_fixtures.hpp"

struct Confused {
  int execute(const OrderRequest &r) { return r.amount; } // no workflow_context
};

void use(cruster::runtime &rt) { rt.register_workflow(Confused{}); }
