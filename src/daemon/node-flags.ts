/**
 * The Node.js/V8 flags dwcpd runs with. Node takes them only on its command
 * line (V8 sizes its heap before any of our code runs; setting them from the
 * program later has no effect), so every launcher passes them: bin/dwcpd and
 * the Dockerfile spell them out (test/unit/launchers.test.ts holds them to
 * this list), the local federation launcher, the benches and the
 * integration harness import it.
 *
 * --max-semi-space-size=8: caps V8's young generation at two 8 MiB
 * semi-spaces. Node 24's default lets it grow well past that on a machine
 * with a few GiB of memory, and what it reserved stays resident: an idle
 * member held ~214 MiB RSS with the default, ~178 MiB with this (~188 MiB
 * with 16, ~165 MiB with 4, where minor collections run twice as often).
 * Issue 19 asks for at most 250 MiB per member under load.
 *
 * --optimize-for-size: V8 grows the old generation less eagerly, keeps the
 * young one small and gives memory back sooner. Under load a member's RSS is
 * mostly garbage and heap slack, not live data (a heap snapshot of a member
 * after 5 000 puts held ~60 MiB of live JS, half of it module source and
 * code, against a 90-140 MiB committed heap). 3-member Raft bench, 16
 * clients for 150 s under the same load: peak RSS 204-207 MiB per member
 * with it, 312-337 MiB without; at 1 and 64 clients 161-179 MiB against
 * 192-277 MiB. The price is CPU: 64-client throughput was ~10 % lower in
 * interleaved runs, 1 client unchanged (bench/RESULTS.md, raft section,
 * "Where a 1-client put's time goes; fewer wake-ups; memory").
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--optimize-for-size'];
