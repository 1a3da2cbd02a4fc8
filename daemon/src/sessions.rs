//! Web sessions now live in `cluster::sessions` (the session store is built on the cluster
//! backends' clients); this path re-exports them for code that still names it.

pub use crate::cluster::etcd::EtcdSessions;
pub use crate::cluster::redis::RedisSessions;
pub use crate::cluster::sessions::{MemorySessions, Session, SessionStore, digest, open};
