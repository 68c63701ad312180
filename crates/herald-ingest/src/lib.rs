//! Herald's thin ingest: turns `POST /im/executions/unitary` calls into RabbitMQ messages, with a
//! 202 only once every message is confirmed by the broker.
//!
//! Not built yet: the execution API, topology and publisher arrive with issue #3. The crate
//! exists now so that the workspace has its final shape and the API crate can mount its routes.
