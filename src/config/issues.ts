/**
 * Schema refusals as sentences that name the field (`members[2].trust:
 * "maybe" is not one of trusted|untrusted`), for the config file and for
 * every other zod schema at the edge (fleet specs and commands, pricing
 * files). A module of its own, importing no schema: the fleet's schemas use
 * it and the config schema includes the fleet's settings, so it cannot live
 * beside the config loader without an import cycle.
 */
import type { z } from 'zod';

/** `members[2].trust: "maybe" is not one of trusted|untrusted` */
export function formatIssue(issue: z.core.$ZodIssue, label: (path: PropertyKey[]) => string = pathString): string {
  const at = label(issue.path) || '(top level)';
  const input = 'input' in issue ? issue.input : undefined;
  const shown = input === undefined ? 'missing' : JSON.stringify(input);
  switch (issue.code) {
    case 'invalid_value':
      return `${at}: ${shown} is not one of ${issue.values.map(String).join('|')}`;
    case 'unrecognized_keys':
      return issue.keys.map((k) => `${label([...issue.path, k])}: unknown key (not part of the schema)`).join('; ');
    case 'invalid_type': {
      const expected = article(TYPE_NAMES[issue.expected] ?? issue.expected);
      return input === undefined ? `${at}: missing, expected ${expected}` : `${at}: ${shown} is not ${expected}`;
    }
    case 'custom':
      // Refinements in the schema state what was expected; superRefine checks say a whole sentence.
      return issue.params?.sentence ? `${at}: ${shown} ${issue.message}` : `${at}: ${shown} is not ${issue.message}`;
    case 'invalid_format':
      return `${at}: ${shown} is not ${issue.message}`;
    case 'too_small':
      return `${at}: ${shown} is ${issue.origin === 'number' ? 'too small' : 'too short'}: expected ${bound('at least', 'more than', issue.minimum, issue.inclusive, issue.origin)}`;
    case 'too_big':
      return `${at}: ${shown} is ${issue.origin === 'number' ? 'too large' : 'too long'}: expected ${bound('at most', 'less than', issue.maximum, issue.inclusive, issue.origin)}`;
    default:
      return `${at}: ${shown}: ${issue.message}`;
  }
}

/** Schema type names as a YAML author knows them. */
const TYPE_NAMES: Record<string, string> = { object: 'mapping', array: 'list', int: 'integer' };

/** `at least 1 item`, `at most 64 characters`, `more than 0`. */
function bound(inclusiveWord: string, exclusiveWord: string, limit: number | bigint, inclusive: boolean | undefined, origin: string): string {
  const unit = origin === 'array' ? ' item' : origin === 'string' ? ' character' : '';
  const plural = unit && limit !== 1 ? 's' : '';
  return `${inclusive === false ? exclusiveWord : inclusiveWord} ${limit}${unit}${plural}`;
}

function article(expected: string): string {
  return /^[aeiou]/.test(expected) ? `an ${expected}` : `a ${expected}`;
}

export function pathString(path: PropertyKey[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s ? `.${String(p)}` : String(p);
  return s;
}
