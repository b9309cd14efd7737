//! The PostgreSQL frontend/backend wire protocol, version 3.0 (PostgreSQL docs,
//! "Frontend/Backend Protocol"), as the router needs it on both sides: as a server to its
//! clients and as a client to the shards.
//!
//! This module knows nothing of routing. It frames bytes into [`Frame`]s (one tagged
//! message: a 1-byte tag and an `i32` length that counts itself), decodes the few message
//! bodies the router must understand, and encodes the messages the router produces. A
//! decoded message always keeps its exact frame, so traffic the router does not need to
//! change is forwarded without re-encoding.
//!
//! Files, one per message family:
//! - [`frame`]: framing, the buffered [`FrameReader`], size limits and decode errors;
//! - [`startup`]: the untagged first packet (StartupMessage, SSLRequest, GSSENCRequest,
//!   CancelRequest);
//! - [`frontend`]: messages a client sends (Query, Parse, Bind, …) and their encoders;
//! - [`backend`]: messages a server sends (Authentication*, ReadyForQuery, ErrorResponse,
//!   result sets, …) and their encoders.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use frame::{Frame, FrameReader, ProtocolError};
