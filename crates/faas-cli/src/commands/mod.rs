pub mod doctor;
pub mod exec;
pub mod instances;
pub mod keys;
pub mod usage;
