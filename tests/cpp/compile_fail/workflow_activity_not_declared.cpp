// expect-error: cruster: this member function is not an activity: list it in its class's activities
#include "workflow_fixtures.hpp"

struct Sloppy {
  int charge(const OrderRequest &r) { return r.amount; }
  int undeclared(const OrderRequest &r) { return r.amount; }
  int execute(cruster::workflow_context<Sloppy> &wf, const OrderRequest &r) {
    return wf.activity<&Sloppy::undeclared>(r); // not in Sloppy::activities
  }
  static constexpr auto activities = cruster::activities(cruster::activity<&Sloppy::charge>("charge"));
};

void use(cruster::runtime &rt) { rt.register_workflow(Sloppy{}); }
