// expect-error: cruster: this method is protected: call it from an entity through context::client<T>()
#include "fixtures.hpp"

// Reading back a persisted call's answer follows the same visibility as making it.
void use(cruster::runtime &rt) {
  (void)rt.client<Ledger>().poll<&Ledger::sync>("l-1", "key-1");
}
