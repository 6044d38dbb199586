output "gateway_addresses" {
  description = "Where other sites reach this site's gateways (ip:port): the external network load balancer."
  value       = ["${google_compute_address.gateway.address}:${var.gateway_port}"]
}

output "api_address" {
  description = "The site's API address (ip:port) inside the network: the internal load balancer in front of the servers."
  value       = "${google_compute_address.api.address}:${var.api_port}"
}

output "dns_address" {
  description = "Mesh DNS inside the network (the Cloud DNS forwarding zone sends the mesh domain here)."
  value       = "${google_compute_address.api.address}:53"
}

output "bundle_endpoint" {
  description = "The site's SPIFFE bundle endpoint URL (https_spiffe profile), on the internal load balancer."
  value       = "https://${google_compute_address.api.address}:${var.bundle_port}"
}

output "trust_domain" {
  description = "The site's SPIFFE trust domain."
  value       = local.trust_domain
}

output "management_token_secret" {
  description = "The Secret Manager secret where the first server stores the initial management token."
  value       = google_secret_manager_secret.bootstrap["management-token"].id
}

output "ca_pem_secret" {
  description = "The Secret Manager secret where the first server stores the site CA certificate (PEM), for the provider's ca_pem."
  value       = google_secret_manager_secret.bootstrap["ca-pem"].id
}
