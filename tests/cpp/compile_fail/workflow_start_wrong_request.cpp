// expect-error: cruster: start takes the workflow's request type
#include "workflow_fixtures.hpp"

void use(cruster::runtime &rt) {
  rt.workflow<Order>().start(OtherRequest{1});
}
