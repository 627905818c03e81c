/**
 * Policy documents as an operator hands them over, to a policy set that is
 * known to compile: the files named by the config's `policies:` (read at
 * config load, so a bad file stops the daemon before it starts) and the
 * documents `dwcpctl policy apply|test FILE` sends (checked by the daemon at
 * the admin edge).
 *
 * Invariants:
 * - A set returned here parsed (document.ts), merged (names unique across
 *   documents) and compiled (compile.ts): a set-policy made of it is refused
 *   by the log only for its version (another came first), never for its
 *   content.
 * - Every problem names its document (the file as given), and a compile
 *   problem the policy, the rule and the line:column in the condition:
 *   `eu.yaml: policy eu-residency rule personal-data-in-eu: condition 1:1: Unknown variable: regoin`.
 *   All problems of all documents are reported, not the first only.
 *
 * checkPolicyDocuments is pure; readPolicyFiles reads the files.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { PolicyCompileError, compilePolicySet, formatPolicyProblem } from './compile.ts';
import { PolicyDocumentError, mergePolicyDocuments, parsePolicyDocument, type PolicySpec } from './document.ts';

/** One document: where it came from (for messages) and its text (YAML or JSON). */
export interface PolicyDocumentText {
  readonly source: string;
  readonly text: string;
}

/** The policies of the config's `policies:` files, in file order. */
export interface PolicyFileSet {
  /** The files as resolved (absolute), in the config's order. */
  readonly files: readonly string[];
  readonly policies: readonly PolicySpec[];
}

export const NO_POLICY_FILES: PolicyFileSet = Object.freeze({ files: Object.freeze([]) as readonly string[], policies: Object.freeze([]) as readonly PolicySpec[] });

/** Documents named in the config or given to one `policy apply`; more is a mistake (a set holds at most 64 policies). */
export const POLICY_MAX_DOCUMENTS = 64;

/**
 * Parses, merges and compiles `documents` into one policy list, or throws
 * PolicyDocumentError with every problem, each naming its document.
 */
export function checkPolicyDocuments(documents: readonly PolicyDocumentText[]): PolicySpec[] {
  if (documents.length > POLICY_MAX_DOCUMENTS) throw new PolicyDocumentError([`${documents.length} policy documents are more than the ${POLICY_MAX_DOCUMENTS} one set may come from`]);
  const problems: string[] = [];
  const parsed: { source: string; policies: PolicySpec[] }[] = [];
  for (const doc of documents) {
    try {
      parsed.push({ source: doc.source, policies: parsePolicyDocument(doc.text, doc.source) });
    } catch (err) {
      if (!(err instanceof PolicyDocumentError)) throw err;
      problems.push(...err.problems);
    }
  }
  if (problems.length > 0) throw new PolicyDocumentError(problems);
  const policies = mergePolicyDocuments(parsed);
  try {
    // The version does not matter to compiling; the log assigns the real one.
    compilePolicySet({ version: 1, policies });
  } catch (err) {
    if (!(err instanceof PolicyCompileError)) throw err;
    const sourceOf = new Map(parsed.flatMap((d) => d.policies.map((p) => [p.name, d.source] as const)));
    throw new PolicyDocumentError(
      err.problems.map((p) => {
        const source = p.policy === '' ? documents.map((d) => d.source).join(', ') : sourceOf.get(p.policy);
        return source === undefined ? formatPolicyProblem(p) : `${source}: ${formatPolicyProblem(p)}`;
      }),
    );
  }
  return policies;
}

/**
 * Reads the config's policy files (relative paths from `baseDir`, the config
 * file's directory) and checks them as one set. Throws PolicyDocumentError
 * naming the file for an unreadable one as for a malformed one.
 */
export function readPolicyFiles(paths: readonly string[], baseDir: string): PolicyFileSet {
  if (paths.length === 0) return NO_POLICY_FILES;
  const files = paths.map((p) => (isAbsolute(p) ? p : resolve(baseDir, p)));
  const problems: string[] = [];
  const documents: PolicyDocumentText[] = [];
  for (const file of files) {
    try {
      documents.push({ source: file, text: readFileSync(file, 'utf8') });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      problems.push(`${file}: cannot read (${e.code ?? e.message})`);
    }
  }
  if (problems.length > 0) throw new PolicyDocumentError(problems);
  return { files, policies: checkPolicyDocuments(documents) };
}
