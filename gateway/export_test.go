package gateway

// OwnRoots is how many of its own site's CA roots the gateway trusts. A
// root prepared in a CA rotation is trusted before it signs.
func (g *Gateway) OwnRoots() int { return len(g.ident.Bundle().X509Authorities()) }
