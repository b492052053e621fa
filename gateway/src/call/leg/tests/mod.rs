//! Legs driven by a fake clock over an in-memory network: two sides, each a
//! transaction layer plus the leg it owns, routing as the endpoint does.
//! No sockets, no sleeps; loss and delay are chosen by the test.

mod dialing;
mod in_dialog;
mod netsim;
mod refer;
