// expect-error: cruster: this method is private: it is never callable, not even from entities
#include "fixtures.hpp"

struct Bank {
  bool transfer(cruster::context &ctx) {
    return ctx.client<Ledger>().join<&Ledger::validate>("l-1", "key-1");
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Bank::transfer>("transfer"));
};

void use(cruster::runtime &rt) { rt.register_entity(Bank{}); }
