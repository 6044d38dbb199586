# Two Strait sites, one on AWS and one on Google Cloud, deployed by the
# modules and federated by the Strait provider: aws-east exports
# payments/api to gcp-west, whose web service may call it.
#
# Apply in two steps (the sites must exist before the provider can talk
# to them), from a host that reaches both sites' internal API addresses:
#
#   terraform apply -target=module.aws_east -target=module.gcp_west
#   terraform apply

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws    = { source = "hashicorp/aws", version = ">= 5.0" }
    google = { source = "hashicorp/google", version = ">= 5.0" }
    strait = { source = "straitmesh/strait" }
  }
}

provider "aws" {
  region = "us-east-1"
}

provider "google" {
  project = var.gcp_project
  region  = "us-west1"
}

# --- The sites --------------------------------------------------------------

module "aws_east" {
  source             = "../../modules/aws"
  site               = "aws-east"
  vpc_id             = var.aws_vpc_id
  subnet_ids         = var.aws_private_subnet_ids
  gateway_subnet_ids = var.aws_public_subnet_ids
  image_id           = var.aws_image_id
  site_cidrs         = [var.aws_vpc_cidr]
  # Only the other site's gateways may reach this site's gateway port.
  peer_gateway_cidrs = [for a in module.gcp_west.gateway_addresses : "${split(":", a)[0]}/32"]
}

module "gcp_west" {
  source     = "../../modules/gcp"
  site       = "gcp-west"
  project    = var.gcp_project
  region     = "us-west1"
  zones      = ["us-west1-a", "us-west1-b", "us-west1-c"]
  network    = var.gcp_network
  subnetwork = var.gcp_subnetwork
  image      = var.gcp_image
  site_cidrs = [var.gcp_subnet_cidr]
}

# Each site's first server stores its management token and CA here.
data "aws_ssm_parameter" "mgmt" {
  name            = module.aws_east.management_token_parameter
  with_decryption = true
}

data "aws_ssm_parameter" "ca" {
  name = module.aws_east.ca_pem_parameter
}

data "google_secret_manager_secret_version" "mgmt" {
  secret = module.gcp_west.management_token_secret
}

data "google_secret_manager_secret_version" "ca" {
  secret = module.gcp_west.ca_pem_secret
}

provider "strait" {
  alias   = "aws_east"
  address = module.aws_east.api_address
  token   = data.aws_ssm_parameter.mgmt.value
  ca_pem  = data.aws_ssm_parameter.ca.value
}

provider "strait" {
  alias   = "gcp_west"
  address = module.gcp_west.api_address
  token   = data.google_secret_manager_secret_version.mgmt.secret_data
  ca_pem  = data.google_secret_manager_secret_version.ca.secret_data
}

# --- The federation ---------------------------------------------------------

# aws-east issues a one-time token for gcp-west...
resource "strait_federation_token" "for_gcp_west" {
  provider = strait.aws_east
  peer     = "gcp-west"
  ttl      = "30m"
}

# ...which gcp-west redeems: both sites now hold each other's bundle.
resource "strait_peering" "gcp_west_to_aws_east" {
  provider = strait.gcp_west
  token    = strait_federation_token.for_gcp_west.token
  name     = "aws-east"
}

# aws-east exports payments/api to gcp-west: it resolves there as
# api.payments.aws-east.mesh.
resource "strait_export" "payments_api" {
  provider   = strait.aws_east
  namespace  = "payments"
  service    = "api"
  to         = ["gcp-west"]
  depends_on = [strait_peering.gcp_west_to_aws_east]
}

# Across sites, what no intention allows is denied.
resource "strait_intention" "web_to_api" {
  provider    = strait.aws_east
  source      = "gcp-west/payments/web"
  destination = "payments/api"
  action      = "allow"
  description = "the storefront in gcp-west calls the payments API"
}

# A read-only token for the CI pipeline's checks.
resource "strait_acl_token" "ci" {
  provider    = strait.aws_east
  kind        = "read"
  description = "ci: read-only"
}

output "aws_east_gateways" {
  value = module.aws_east.gateway_addresses
}

output "gcp_west_gateways" {
  value = module.gcp_west.gateway_addresses
}

output "ci_token" {
  value     = strait_acl_token.ci.secret
  sensitive = true
}
