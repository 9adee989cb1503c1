// expect-error: cruster: execute takes the workflow's request type
#include "workflow_fixtures.hpp"

void use(cruster::runtime &rt) {
  auto orders = rt.register_workflow(Order{}, Inventory{});
  orders.with_key("k").execute(OtherRequest{1}); // Order::execute takes an OrderRequest
}
