// expect-error: cruster: this method is protected: call it from an entity through context::client<T>()
#include "fixtures.hpp"

void use(cruster::runtime &rt) {
  rt.client<Ledger>().notify<&Ledger::sync>("l-1", SyncRequest{1});
}
