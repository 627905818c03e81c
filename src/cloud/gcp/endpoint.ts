/**
 * A Google API endpoint override as the client libraries take it: host,
 * port and protocol apart (they always send a port, 443 unless told), from
 * one URL. Shared by the Compute clients and the Monitoring client.
 */
import { InvalidRequestError } from '../provider.ts';

export function endpointOptions(endpoint: string | undefined): { apiEndpoint?: string; port?: number; protocol?: string } {
  if (!endpoint) return {};
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new InvalidRequestError('gcp', 'configure', 'InvalidConfig', `endpoint: ${JSON.stringify(endpoint)} is not a URL (e.g. http://127.0.0.1:8085)`);
  }
  const protocol = url.protocol.replace(':', '');
  if (protocol !== 'http' && protocol !== 'https') throw new InvalidRequestError('gcp', 'configure', 'InvalidConfig', `endpoint: protocol must be http or https, got ${protocol}`);
  return { apiEndpoint: url.hostname, port: url.port ? Number(url.port) : protocol === 'https' ? 443 : 80, protocol };
}
