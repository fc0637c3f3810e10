#![no_std]
//! Record types shared by `agent-ebpf` and the userspace agent.
