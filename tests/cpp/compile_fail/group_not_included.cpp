// expect-error: cruster: this method belongs neither to the entity nor to an rpc group it includes
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  auto plain = rt.register_entity(Plain{});
  plain.call<&Auditable::log_action>("p-1"); // Plain does not include Auditable
}
