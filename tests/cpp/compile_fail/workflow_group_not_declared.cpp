// expect-error: cruster: register_workflow got an instance of a group W does not include
#include "workflow_fixtures.hpp"

void use(cruster::runtime &rt) { rt.register_workflow(Order{}, Inventory{}, Shipping{}); }
