//! Stack capture on Linux, x86-64 and aarch64: the signal half
//! ([`signal`]), the thread records it needs ([`thread`]), and the
//! capturing half ([`unwind`], [`symbolize`]), tied together by
//! [`StackSampler`].

mod sampler;
mod signal;
mod symbolize;
mod thread;
mod unwind;

#[cfg(test)]
mod tests;

pub(crate) use sampler::StackSampler;
pub(crate) use thread::ThreadHandle;
