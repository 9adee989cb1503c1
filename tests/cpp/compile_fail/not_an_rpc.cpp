// expect-error: cruster: this member function is not an rpc: list it in its class's rpcs
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  rt.client<Ledger>().call<&Ledger::helper>("l-1");
}
