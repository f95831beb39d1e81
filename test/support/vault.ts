// A real Vault for integration tests (see dev/local-vault): HashiCorp Vault
// built by setup, run as `vault server -dev` on a free loopback port.
import { startLocalVault, vaultBinary, type LocalVault } from '../../dev/local-vault/index.js';

export type TestVault = LocalVault;
export { vaultBinary };

export function startVault(): Promise<TestVault> {
  return startLocalVault();
}
