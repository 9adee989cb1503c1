// expect-error: cruster: this method is private: it is never callable, not even from entities
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  auto ledger = rt.register_entity(Ledger{});
  ledger.call<&Ledger::validate>("l-1", SyncRequest{1});
}
