// expect-error: cruster: this activity belongs neither to the workflow nor to an activity group it includes
#include "workflow_fixtures.hpp"

struct Careless {
  std::string execute(cruster::workflow_context<Careless> &wf, const OrderRequest &r) {
    return wf.activity<&Shipping::ship>(r); // Careless does not include Shipping
  }
  using groups = cruster::groups<Inventory>;
};

void use(cruster::runtime &rt) { rt.register_workflow(Careless{}, Inventory{}); }
