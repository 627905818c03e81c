/**
 * EC2's rules for instance tags, checked before a call so a bad tag is
 * refused with its key named (and, through the config schema, before the
 * daemon starts) rather than by EC2 after a round trip. Kept apart from the
 * provider so the config check does not load the AWS SDK.
 */
import { checkTags, InvalidRequestError, type Tags } from '../provider.ts';

/** EC2's limit of user tags per resource. */
export const MAX_AWS_TAGS = 50;

/** What is wrong with a tag set by EC2's rules, naming the key; null when nothing is. */
export function awsTagProblem(tags: Tags): string | null {
  const entries = Object.entries(tags);
  if (entries.length > MAX_AWS_TAGS) return `tags: ${entries.length} tags, over EC2's limit of ${MAX_AWS_TAGS} per instance`;
  for (const [key, value] of entries) {
    if (key.toLowerCase().startsWith('aws:')) return `tags.${key}: keys starting with "aws:" are reserved by AWS`;
    if (key.length > 128) return `tags.${key.slice(0, 20)}…: key longer than 128 characters`;
    if (value.length > 256) return `tags.${key}: value longer than 256 characters`;
  }
  return null;
}

export function checkAwsTags(operation: string, tags: Tags): void {
  checkTags('aws', operation, tags);
  const problem = awsTagProblem(tags);
  if (problem !== null) throw new InvalidRequestError('aws', operation, 'InvalidParameterValue', problem);
}
