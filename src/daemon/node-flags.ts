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
 * --expose-gc: gives the program gc(), which heap-budget.ts calls, where
 * the config sets gcBudgetMiB, to keep the garbage a daemon holds under load
 * within that budget (V8's own triggers let a Raft member reach ~400 MiB
 * RSS; the module says why and what it costs). Nothing else calls it.
 *
 * Not --optimize-for-size: it held a Raft member under load to ~205 MiB
 * RSS (~300 MiB without), but on a quiet machine it halved the bulk blob
 * transfer (40 against 105 MiB/s, 512 MiB on one stream) and cost Raft a
 * third of its 64-client throughput: V8 collecting more eagerly costs most
 * where buffers churn (bench/RESULTS.md, raft and delta sections).
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=8', '--expose-gc'];
