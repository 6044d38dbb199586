output "gateway_addresses" {
  description = "Where other sites reach this site's gateways (ip:port): the public load balancer."
  value       = ["${azurerm_public_ip.gateway.ip_address}:${var.gateway_port}"]
}

output "api_address" {
  description = "The site's API address (ip:port) inside the virtual network: the internal load balancer in front of the servers."
  value       = local.join_address
}

output "dns_address" {
  description = "Mesh DNS inside the virtual network (the resolver's forwarding rule sends the mesh domain here)."
  value       = "${var.api_private_ip}:53"
}

output "bundle_endpoint" {
  description = "The site's SPIFFE bundle endpoint URL (https_spiffe profile), on the internal load balancer."
  value       = "https://${var.api_private_ip}:${var.bundle_port}"
}

output "trust_domain" {
  description = "The site's SPIFFE trust domain."
  value       = local.trust_domain
}

output "key_vault_name" {
  description = "The Key Vault where the first server stores the initial management token (secret management-token)."
  value       = azurerm_key_vault.bootstrap.name
}
