// A real OpenID Connect provider (the `oidc-provider` package) for the single sign-on
// tests. The test suite starts it on loopback:
//   node server.mjs PORT '<json config>'
// PORT 0 lets the system pick a free one (no race with other tests picking theirs); the
// first line printed is `ready <issuer>`, with the port it got.
// config: {"client_id", "client_secret", "redirect_uri", "accounts": {login: {claims}}}
// Its development login form accepts any password for a login listed in `accounts`.
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[3]);
// The issuer names the port, so the socket is bound before the provider is made.
const server = createServer();
await new Promise((resolve) => server.listen(Number(process.argv[2]), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: [config.redirect_uri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  async findAccount(ctx, sub) {
    const claims = config.accounts[sub];
    if (!claims) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...claims }) };
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['runboard-test-only'] },
});
provider.proxy = false;

server.on('request', provider.callback());
console.log(`ready ${issuer}`);
