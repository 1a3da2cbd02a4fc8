//! Fleet Server cluster node.
