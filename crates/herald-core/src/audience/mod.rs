//! Audiences: selecting stored profiles with a filter ([`filter`]), compiled to parameterised SQL,
//! or an uploaded list ([`members`]); and the audience execution request ([`request`]).

pub mod filter;
pub mod members;
pub mod request;
