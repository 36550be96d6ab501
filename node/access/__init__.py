"""Who may do what: scopes, network grants, bearer tokens and the browser rules.

``scopes``   the scope names (extensible) and scope lists
``routes``   pure: which scope every route needs, and which routes take JSON bodies
``browser``  pure: the Host, Origin and Content-Type rules (DNS rebinding, cross-origin)
``tokens``   bearer tokens: generation, hashing, the token file and its live view
``policy``   the one decision per request, taken before routing on both HTTP paths
"""
