pub mod doctor;
pub mod exec;
pub mod keys;
