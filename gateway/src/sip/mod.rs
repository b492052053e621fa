//! SIP: tolerant framing, message model, transactions and dialogs (sans-IO),
//! and the thin async transport shells around them.
