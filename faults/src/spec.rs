//! Fault specifications. They are wire types of the agent API, so they live in
//! [`chaos_proto::fault`]; this crate carries them out.

pub use chaos_proto::fault::*;

impl From<InvalidFault> for crate::Error {
    fn from(e: InvalidFault) -> Self {
        crate::Error::Invalid {
            field: e.field,
            reason: e.reason,
        }
    }
}
