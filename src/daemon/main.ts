#!/usr/bin/env node
/**
 * Entry of `dwcpd`. Turns on Node's on-disk compile cache before the daemon's
 * modules load (static imports would be compiled before any statement here
 * ran), which takes about a third off every start after the first; then hands
 * over to the command line in command.ts.
 */
import { enableCompileCache } from 'node:module';

enableCompileCache();
await import('./command.ts');
