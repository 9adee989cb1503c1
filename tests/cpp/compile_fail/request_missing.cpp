// expect-error: cruster: this rpc takes a request: pass it after the entity id
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  rt.client<Ledger>().call_async<&Ledger::sync>("l-1");
}
