//! Card-data domain types for tokengate.
//!
//! Everything a request carries about a card is parsed here exactly once into
//! a type that is valid by construction: [`Pan`] (digits, length per brand,
//! Luhn), [`Cvc`], [`Expiry`], [`Token`]. None of these types can be printed
//! with their secret content: `Debug` masks, and there is no `Display` or
//! `Serialize` for PAN or CVC. Getting the digits out needs an explicit
//! `expose_*` call, which is easy to find in review.
//!
//! This crate does no I/O: no clock, no randomness source, no files. Callers
//! pass the current month and random bytes in.

#![forbid(unsafe_code)]

pub mod brand;
pub mod card;
pub mod luhn;
pub mod pan;
pub mod redact;
pub mod token;

pub use brand::Brand;
pub use card::{CardError, Cvc, Expiry, YearMonth};
pub use pan::Pan;
pub use redact::{contains_pan_like, redact_pans};
pub use token::{Token, TokenFormat, TokenParseError};
