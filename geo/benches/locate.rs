//! The cost of `request.location` per audited call: one lookup of the client's address.

#![allow(clippy::unwrap_used)] // a bench that cannot parse its fixed inputs has nothing to measure

use std::hint::black_box;
use std::net::IpAddr;

use auditgate_geo::Locator;
use criterion::{Criterion, criterion_group, criterion_main};

fn locate(c: &mut Criterion) {
    let locator = Locator::embedded();
    let public: IpAddr = "81.2.69.160".parse().unwrap();
    let private: IpAddr = "10.1.2.3".parse().unwrap();
    let v6: IpAddr = "2a00:1450:4001:82a::200e".parse().unwrap();
    c.bench_function("locate/embedded/ipv4", |b| {
        b.iter(|| locator.locate(black_box(public)))
    });
    c.bench_function("locate/embedded/ipv6", |b| {
        b.iter(|| locator.locate(black_box(v6)))
    });
    c.bench_function("locate/private", |b| {
        b.iter(|| locator.locate(black_box(private)))
    });
}

criterion_group!(benches, locate);
criterion_main!(benches);
