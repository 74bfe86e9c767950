//! The store on SQLite and PostgreSQL: the write paths, the operations queries, the ticket tables.

mod store_backends;
mod store_ops;
mod ticket_store;
mod upgrade;
