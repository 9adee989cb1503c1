// expect-error: cruster: this method is private: it is never callable, not even from entities
#include "fixtures.hpp"

struct Bank {
  bool check(cruster::context &ctx) {
    return ctx.client<Ledger>().call<&Ledger::validate>("l-1", SyncRequest{1});
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Bank::check>("check"));
};
