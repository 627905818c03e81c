/**
 * GCE's rules for instance labels (the provider's tags), checked before a
 * call so a bad label is refused with its key named (and, through the config
 * schema, before the daemon starts). Kept apart from the provider so the
 * config check does not load the Google SDK.
 */
import { checkTags, InvalidRequestError, type Tags } from '../provider.ts';

const LABEL_KEY_RE = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE_RE = /^[a-z0-9_-]{0,63}$/;
export const MAX_GCP_LABELS = 64;

/** What is wrong with a label set by GCE's rules, naming the key; null when nothing is. */
export function gcpLabelProblem(tags: Tags): string | null {
  const entries = Object.entries(tags);
  if (entries.length > MAX_GCP_LABELS) return `tags: ${entries.length} labels, over GCE's limit of ${MAX_GCP_LABELS}`;
  for (const [key, value] of entries) {
    if (!LABEL_KEY_RE.test(key)) return `tags.${key}: GCE label keys start with a lowercase letter and hold only a-z, 0-9, "_" and "-" (at most 63)`;
    if (!LABEL_VALUE_RE.test(value)) return `tags.${key}: GCE label values hold only a-z, 0-9, "_" and "-" (at most 63), got ${JSON.stringify(value)}`;
  }
  return null;
}

export function checkLabels(operation: string, tags: Tags): void {
  checkTags('gcp', operation, tags);
  const problem = gcpLabelProblem(tags);
  if (problem !== null) throw new InvalidRequestError('gcp', operation, 'INVALID_ARGUMENT', problem);
}
