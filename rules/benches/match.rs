//! Lookup cost as rule sets grow: `RuleSet::matches` (normalisation, trie walk and the match
//! handed back) at 10, 100, 1 000 and 10 000 generated rules, for hits and misses.
//!
//! Run: `cargo bench -p auditgate-rules --bench match`

use std::hint::black_box;

use auditgate_rules::RuleSet;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Calls to look up: a method and a path.
type Calls = Vec<(http::Method, String)>;

/// Realistic shapes: per resource kind a collection create, an item update and delete, a
/// sub-resource action and a nested path under an organisation.
fn generate(rules: usize) -> (String, Calls, Calls) {
    let mut yaml = String::from("version: 1\nservice: bench\nrules:\n");
    let mut hits = Vec::new();
    let kinds = rules.div_ceil(5);
    let mut written = 0;
    'outer: for k in 0..kinds {
        let shapes = [
            ("POST", format!("/v1/kind{k}s"), format!("/v1/kind{k}s")),
            (
                "PATCH",
                format!("/v1/kind{k}s/{{id}}"),
                format!("/v1/kind{k}s/abc{k}"),
            ),
            (
                "DELETE",
                format!("/v1/kind{k}s/{{id}}"),
                format!("/v1/kind{k}s/x-{k}"),
            ),
            (
                "POST",
                format!("/v1/kind{k}s/{{id}}/actions/publish"),
                format!("/v1/kind{k}s/i{k}/actions/publish"),
            ),
            (
                "PUT",
                format!("/api/orgs/{{org}}/kind{k}/{{*rest}}/settings"),
                format!("/api/orgs/acme/kind{k}/a/b/settings"),
            ),
        ];
        for (method, pattern, path) in shapes {
            if written == rules {
                break 'outer;
            }
            yaml.push_str(&format!(
                "  - {{ id: r{written}, operation: kind{k}.op{written}, method: {method}, path: \"{pattern}\", resources: [{{ type: kind{k}, id: \"{{body/id}}\" }}] }}\n"
            ));
            hits.push((method.parse().expect("method"), path));
            written += 1;
        }
    }
    let misses = (0..64)
        .map(|i| match i % 3 {
            0 => (http::Method::GET, format!("/v1/kind{}s/abc", i % kinds)),
            1 => (http::Method::POST, format!("/v2/unknown/{i}/thing")),
            _ => (
                http::Method::PATCH,
                format!("/v1/kind{}s/abc/deep/er/{i}", i % kinds),
            ),
        })
        .collect();
    (yaml, hits, misses)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for size in [10usize, 100, 1_000, 10_000] {
        let (yaml, hits, misses) = generate(size);
        let rules = RuleSet::from_yaml("bench.yaml", &yaml).expect("generated rules load");
        assert!(hits.iter().all(|(m, p)| rules.matches(m, p).is_some()));
        assert!(misses.iter().all(|(m, p)| rules.matches(m, p).is_none()));
        for (name, calls) in [("hit", &hits), ("miss", &misses)] {
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    i = (i + 7919) % calls.len();
                    let (method, path) = &calls[i];
                    black_box(rules.matches(black_box(method), black_box(path)))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
