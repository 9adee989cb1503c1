// expect-error: cruster: wrong request type for this activity
#include "workflow_fixtures.hpp"

struct Wrapper {
  int execute(cruster::workflow_context<Wrapper> &wf, const OrderRequest &) {
    return wf.activity<&Wrapper::charge>(OtherRequest{2}); // charge takes an OrderRequest
  }
  int charge(const OrderRequest &r) { return r.amount; }
  static constexpr auto activities = cruster::activities(cruster::activity<&Wrapper::charge>("charge"));
};

void use(cruster::runtime &rt) { rt.register_workflow(Wrapper{}); }
