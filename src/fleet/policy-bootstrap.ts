/**
 * What a node does with the policy files its config names (`policies:`),
 * given the policy set its replica of the federation log holds. Pure.
 *
 * The log wins once it holds a version: the files only bootstrap a
 * federation whose log never had a policy set. While the log has none, any
 * node with files proposes them as version 1: the version is the
 * compare-and-set (the state machine refuses a version not above the
 * current one), so when several nodes propose at once exactly one set is
 * accepted and the others are refused stale_policy_version, then find the
 * log's version here and say whether it matches their files.
 *
 * An empty file set proposes nothing (version 0 already means no policies).
 */
import { canonicalJson, type SetPolicyCommand } from './commands.ts';
import type { PolicyFileSet } from '../policy/files.ts';
import type { PolicySet } from '../policy/document.ts';

export type PolicyBootstrap =
  /** No files, or files with no policies: nothing to do. */
  | { readonly kind: 'none' }
  /** The log has no policy version: propose the files as version 1. */
  | { readonly kind: 'propose'; readonly command: SetPolicyCommand }
  /** The log's version holds exactly the files' policies. */
  | { readonly kind: 'same'; readonly version: number }
  /** The log's version differs from the files: it wins, the files are ignored. */
  | { readonly kind: 'ignored'; readonly version: number };

export function policyBootstrap(files: PolicyFileSet, log: PolicySet): PolicyBootstrap {
  if (files.policies.length === 0) return { kind: 'none' };
  if (log.version === 0) return { kind: 'propose', command: { kind: 'set-policy', version: 1, policies: [...files.policies] } };
  return canonicalJson(log.policies) === canonicalJson(files.policies) ? { kind: 'same', version: log.version } : { kind: 'ignored', version: log.version };
}
