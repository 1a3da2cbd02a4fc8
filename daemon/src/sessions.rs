//! Web sessions now live in `cluster::sessions` (the session store is built on the cluster
//! backends' clients); this path re-exports them for code that still names it.

pub use crate::cluster::sessions::{
    EtcdSessions, MemorySessions, RedisSessions, Session, SessionStore, digest, open,
};
