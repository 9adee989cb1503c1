// expect-error: cruster: the value does not have the deferred's type
#include "workflow_fixtures.hpp"

void use(cruster::runtime &rt) {
  rt.workflow<Order>().resolve("id-1", Order::approval, OtherRequest{3}); // an Approval is expected
}
