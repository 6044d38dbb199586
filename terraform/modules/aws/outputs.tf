output "gateway_addresses" {
  description = "Where other sites reach this site's gateways (ip:port): the network load balancer's fixed address in each zone."
  value       = [for ip in values(local.gateway_ips) : "${ip}:${var.gateway_port}"]
}

output "api_address" {
  description = "The site's API address (host:port) inside the VPC: the internal load balancer in front of the servers. Use it as the provider's address."
  value       = "${local.lb_ips[0]}:${var.api_port}"
}

output "api_addresses" {
  description = "Every fixed address of the internal load balancer (one per subnet), host:port."
  value       = [for ip in local.lb_ips : "${ip}:${var.api_port}"]
}

output "dns_addresses" {
  description = "Mesh DNS inside the VPC (the Route 53 Resolver rule forwards the mesh domain here)."
  value       = [for ip in local.lb_ips : "${ip}:53"]
}

output "bundle_endpoint" {
  description = "The site's SPIFFE bundle endpoint URL: the S3 object when publish_bundle is set (https_web), else the servers' endpoint (https_spiffe)."
  value       = var.publish_bundle ? "https://${aws_s3_bucket.bundle[0].bucket_regional_domain_name}/${local.trust_domain}/bundle.json" : "https://${local.lb_ips[0]}:${var.bundle_port}"
}

output "trust_domain" {
  description = "The site's SPIFFE trust domain."
  value       = local.trust_domain
}

output "management_token_parameter" {
  description = "The SSM parameter (SecureString) where the first server stores the initial management token."
  value       = "${local.ssm_prefix}/management-token"
}

output "kms_key_arn" {
  description = "The KMS key that wraps the servers' key-encryption keys."
  value       = aws_kms_key.kek.arn
}

output "ca_pem_parameter" {
  description = "The SSM parameter where the first server stores the site CA certificate (PEM) that verifies its servers, for the provider's ca_pem."
  value       = "${local.ssm_prefix}/ca-pem"
}
