// expect-error: cruster: this method is protected: call it from an entity through context::client<T>()
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  auto ledger = rt.register_entity(Ledger{});
  ledger.call<&Ledger::sync>("l-1", SyncRequest{1});
}
