//! The message flow end to end: RabbitMQ → bridge → CEM recorder, the survey lifecycle, the
//! worked examples of the domain rules, crash safety, reconnects, live reloads and log lines.

mod crash_safety;
mod logs;
mod reconnect;
mod reload;
mod slice_e2e;
mod survey_lifecycle;
mod worked_examples;
