/**
 * A real `external_account` credentials file for the GCP client libraries,
 * whose token_url is a fake Compute server's STS endpoint: the auth library
 * exchanges a subject token there for a Bearer token, as it would with
 * Google's STS. Tests point a GCP provider's keyFile (or
 * GOOGLE_APPLICATION_CREDENTIALS) at the path returned.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function writeExternalAccount(dir: string, tokenUrl: string, name = 'gcp-external-account.json'): string {
  const subjectToken = join(dir, 'subject-token');
  writeFileSync(subjectToken, 'fake-oidc-subject-token');
  const path = join(dir, name);
  writeFileSync(
    path,
    JSON.stringify({
      type: 'external_account',
      audience: '//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/dwcp/providers/fake',
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      token_url: tokenUrl,
      credential_source: { file: subjectToken },
    }),
  );
  return path;
}
