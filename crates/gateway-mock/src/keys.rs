//! Service-account test key and OAuth token endpoint checks for the Vertex dialect.
//!
//! The key pair below was generated once with `openssl genrsa 2048` for tests only; it protects nothing.

/// PKCS#8 PEM of the fixed RSA 2048 test key embedded in [`test_service_account`](crate::test_service_account).
pub const TEST_PRIVATE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDMi/qzwWXz8JM8\n\
jJqTpu12CjkAFF4CnrYQSLJEFsXRhTil9IrwYrXljucOR1xiN2Y/UO+44TzMN4wk\n\
EOy9UOXgea9WnwOn1FFVHJ2jh9RLeakrN7QtLElJVylbSE+xENcahYAACSobEtyr\n\
EV3kAabpwYNqU4h0W/sINHXWLHOp5xV0Ruw3fzxg7sSxv5G04V+d9VQzneegF/c9\n\
1KcsILnZr5mdc/cUAg+BABWYA7XZmm3kiNaJhJU9rR3BZas21qq9NchlcALO4NgN\n\
fyT0rgiKYkP4vS2wqycsUfzhWtko2vQ12FY0o+cngd2wzNZTQT9cfMyiQKRa4XD4\n\
kaidcp+FAgMBAAECggEAKQpvB3EnAS6EhFIb08NbAuOjMzJi+HiaxCKp7gJ5t4PY\n\
7WdnFztfDsvA7XsA/M3rzIlzR++dcMY2bqgcsBGSxhr0RNeL9rkhhofC02R2ApzL\n\
BhpbovKvU7FS4XddUgQ0fKRLnfY4xgzfTM2jvpNcR6ulsAhJqTspX6iS+iGaJX0V\n\
2TovBzyZudFmGtoXbTHUg7HeJYRUMlBN4AX1+lDxE4BN6VUN2USRYt+4NXq3OaTK\n\
LzWnFRTIcV+ZyBX7T/jWdq40J9t6BJd+6+KgOnU8sGlFBq0tP60lSXEptttsvGDh\n\
8mm5lmDg0eVFiuLVr8KMmuTNmWwF8jzGa5IgRkpjUQKBgQDn+odeIAlAR5j9Av5p\n\
iauPDomMM7u4i+Mhmfkl2nStUa7GHqjGMLcV2zGhv/RFHz6TiKTeLe92B61RX3Y8\n\
6d+pffMfomNKFn7tl8vVFruHg/MRrlBHimH/4dg0wHk7bL+EhdjlhUiUye8fLc+V\n\
GhTAzYJ/sp0q9VGQO5CmSnvGSQKBgQDhukQXUPzQZNnEhhxBA8ChVFEzQNmiE3xt\n\
DKFD7gFLJI+UfiliqY+WsNpMJN1dE8vjKJ+j2bsTPByH3psdd/o36gFCHQy0W6T2\n\
/+9erkoM9hTpsawV0iK0PZat+OP11U6GWkti8DJsqXqTSekGkqfjSgq2aV9J44I3\n\
vGZG7rLfXQKBgD/HDyR/pkt348Xb5tpZMUOZeZOEPZ4VR5LbZDZWAzILfQOXNkuW\n\
5R8rLlAMGDpQxsGFFd7HvkgzACGZH0bL/eP5brhJywZ5fNgRncauA0zUqCU6SXQB\n\
xcO18d0+9ZWy5kynB+TCahwOEKH/1Exn6UDAv5ogHznKTGxdE/3ECJeRAoGBAK3a\n\
dI8wxUcMJd2DHUfFyBt5gYDkNbrrHy4uSBa1vTFO23cXJHDk/76kP73dttD1aldu\n\
9mWQUNGjvqW3AelUeteN16JAFYTkAM5smMRnoIkTD1Bek5fK3QfNV7xuscSpoW1B\n\
JkbxkSS387x1dJCna79XS6Dqz4VtQOIErRF8zy/RAoGBAKRPmrEzFbNJriDDkVFM\n\
THD/b1q85YDFs6Pff/cN9qFO+IWLdTBgKftpmWINUXWMaJYH1CAKXE2MIRPUbGCO\n\
XCWFhUKwo8i15dy8Y2xafdwCJBffUyrpUnUUb31b1vcgTeGmjMbiO4oSSQ04tjDs\n\
7cHzO0AR8POFq7Qpf1p4KSEn\n\
-----END PRIVATE KEY-----\n\
";

/// SPKI PEM of the public half of [`TEST_PRIVATE_KEY_PEM`]; the mock verifies RS256 JWT signatures with it.
pub const TEST_PUBLIC_KEY_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzIv6s8Fl8/CTPIyak6bt\n\
dgo5ABReAp62EEiyRBbF0YU4pfSK8GK15Y7nDkdcYjdmP1DvuOE8zDeMJBDsvVDl\n\
4HmvVp8Dp9RRVRydo4fUS3mpKze0LSxJSVcpW0hPsRDXGoWAAAkqGxLcqxFd5AGm\n\
6cGDalOIdFv7CDR11ixzqecVdEbsN388YO7Esb+RtOFfnfVUM53noBf3PdSnLCC5\n\
2a+ZnXP3FAIPgQAVmAO12Zpt5IjWiYSVPa0dwWWrNtaqvTXIZXACzuDYDX8k9K4I\n\
imJD+L0tsKsnLFH84VrZKNr0NdhWNKPnJ4HdsMzWU0E/XHzMokCkWuFw+JGonXKf\n\
hQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
