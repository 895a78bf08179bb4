//! One step function per role, chosen by `RawNode::step` with a single `match` on the role.

mod candidate;
mod follower;
mod leader;
